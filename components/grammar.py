"""The command grammar of the speech-to-text corpus: what people say to a home or phone assistant.

Pure data: sentence templates whose `<slot>` tokens expand to the phrases listed under that slot (phrases may hold
slots themselves, and "" makes a slot optional). Numbers are spelled as words, so every sentence is in the alphabet.
"""

from __future__ import annotations

from functools import cache

import numpy as np

TEMPLATES: tuple[str, ...] = (
    # Lights and appliances.
    "turn <on_off> the <device>",
    "turn <on_off> the <room> <device>",
    "turn the <room> <device> <on_off>",
    "switch <on_off> the <device> in the <room>",
    "dim the <room> lights to <percent> percent",
    "set the <room> lights to <percent> percent",
    "make the <room> <brighter>",
    "is the <room> <device> on",
    # Heating.
    "set the thermostat to <degrees> degrees",
    "set the <room> temperature to <degrees> degrees",
    "what is the temperature in the <room>",
    "make it <warmer> in the <room>",
    # Doors and windows.
    "<lock> the <door>",
    "is the <door> locked",
    "<open> the <room> <window>",
    # Timers and alarms.
    "set a timer for <duration>",
    "set a <timer_name> timer for <duration>",
    "start a <count> minute timer",
    "<timer_action> the <timer_name> timer",
    "how much time is left on the <timer_name> timer",
    "set an alarm for <clock> <when>",
    "wake me up at <clock> <when>",
    "<alarm_action> my alarm for <clock>",
    # Reminders and lists.
    "remind me to <task> at <clock>",
    "remind me to <task> <day>",
    "remind me to <task> in <delay>",
    "add <item> to my <list_name> list",
    "remove <item> from my <list_name> list",
    "what is on my <list_name> list",
    # Calls and messages.
    "call <contact>",
    "call <contact> on speaker",
    "call <contact> at <call_place>",
    "text <contact> <message>",
    "send a message to <contact>",
    "tell <contact> <message>",
    "read my <new> messages",
    "do i have any <new> messages",
    # Weather and time.
    "what is the weather <day>",
    "what is the weather in <city> <day>",
    "what's the weather like in <city>",
    "will it <weather> in <city> <day>",
    "will it <weather> <day>",
    "how <hot> will it be <day>",
    "what time is it",
    "what time is it in <city>",
    "what day is it <day>",
    # Music and media.
    "play some <genre>",
    "play some <genre> in the <room>",
    "play <genre> music on the <room> speaker",
    "play my <playlist> playlist",
    "<media_action> the music",
    "<skip> this song",
    "turn the volume <up_down>",
    "set the volume to <count>",
    "turn it <up_down> in the <room>",
    # Getting around.
    "navigate to <destination>",
    "how long is the drive to <destination>",
    "how far is <destination>",
    "find a <shop> near me",
    # Questions and small talk.
    "what is <small> <operator> <small>",
    "how do you spell <item>",
    "tell me a <story>",
    "good <part_of_day>",
    "<politeness> that's all",
)

SLOTS: dict[str, tuple[str, ...]] = {
    "on_off": ("on", "off"),
    "room": (
        "kitchen", "bedroom", "living room", "bathroom", "hallway", "garage", "basement", "office", "dining room",
        "guest room", "nursery", "attic", "porch", "garden", "laundry room", "study",
    ),
    "device": (
        "lights", "lamp", "fan", "heater", "air conditioner", "television", "radio", "speaker", "coffee maker",
        "dishwasher", "washing machine", "oven", "kettle", "fireplace", "heated floor",
    ),
    "percent": ("<tens>", "<tens> five", "five", "one hundred"),
    "tens": ("ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"),
    "brighter": ("brighter", "darker", "warmer", "cooler", "quieter"),
    "degrees": ("<teen>", "twenty <digit>", "twenty", "sixty <digit>", "seventy <digit>", "seventy", "sixty"),
    "warmer": ("warmer", "cooler", "a bit warmer", "a bit cooler", "a little warmer", "a little cooler"),
    "lock": ("lock", "unlock"),
    "door": ("front door", "back door", "garage door", "side door", "gate"),
    "open": ("open", "close"),
    "window": ("blinds", "curtains", "window", "shades", "shutters"),
    "digit": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "teen": ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
             "nineteen"),
    # One to fifty nine.
    "count": ("<digit>", "<teen>", "twenty", "thirty", "forty", "fifty", "twenty <digit>", "thirty <digit>",
              "forty <digit>", "fifty <digit>"),
    "duration": ("one minute", "one hour", "one second", "<count> minutes", "<count> seconds", "<hours>",
                 "half an hour", "an hour and a half"),
    # Short enough that a reminder stays within ten words.
    "delay": ("one minute", "one hour", "<count> minutes", "<hours>", "half an hour"),
    "hours": ("two hours", "three hours", "four hours", "five hours", "six hours"),
    "timer_name": ("", "kitchen", "pasta", "pizza", "egg", "laundry", "workout", "homework", "tea", "rice"),
    "timer_action": ("cancel", "stop", "pause", "resume", "restart"),
    "clock": ("<hour> o'clock", "<hour> <minutes>", "noon", "midnight", "half past <hour>", "quarter past <hour>",
              "quarter to <hour>"),
    "hour": ("<digit>", "ten", "eleven", "twelve"),
    "minutes": ("fifteen", "thirty", "forty five", "oh five", "ten", "twenty", "fifty", "twenty five"),
    "when": ("", "tomorrow", "tonight", "in the morning", "on <weekday>", "every day", "on weekdays"),
    "alarm_action": ("cancel", "delete", "move", "snooze", "change"),
    "weekday": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "day": ("", "today", "tomorrow", "tonight", "this weekend", "next week", "on <weekday>", "this afternoon",
            "this evening", "tomorrow morning"),
    "task": (
        "buy milk", "buy some bread", "call the dentist", "water the plants", "feed the cat", "walk the dog",
        "take my medicine", "pay the rent", "check the oven", "pick up groceries", "book a haircut",
        "send the email", "charge my phone", "lock the door", "clean the kitchen", "empty the trash",
        "call grandma", "stretch", "drink water", "pack my lunch", "return the books", "renew my passport",
    ),
    "item": (
        "milk", "bread", "eggs", "butter", "cheese", "apples", "bananas", "coffee", "tea", "rice", "pasta",
        "tomatoes", "onions", "potatoes", "chicken", "yogurt", "cereal", "orange juice", "olive oil",
        "toilet paper", "dish soap", "batteries", "flour", "sugar", "honey", "carrots", "lemons", "salt",
    ),
    "list_name": ("shopping", "grocery", "to do", "packing", "party", "christmas"),
    "contact": (
        "mom", "dad", "grandma", "grandpa", "my sister", "my brother", "my wife", "my husband", "my boss",
        "the office", "the doctor", "john", "sarah", "david", "emma", "michael", "olivia", "james", "sophia",
        "peter", "anna", "alex", "maria", "tom", "lucy", "daniel", "kate",
    ),
    "call_place": ("home", "work", "the office"),
    "message": (
        "i'm running late", "i'm on my way", "i'll be home soon", "dinner is ready", "call me back",
        "i love you", "see you tonight", "happy birthday", "thank you", "i'm at the station", "where are you",
        "don't forget the keys",
    ),
    "new": ("", "new", "unread", "latest"),
    "city": (
        "paris", "london", "tokyo", "berlin", "madrid", "rome", "boston", "chicago", "seattle", "toronto",
        "sydney", "dublin", "new york", "los angeles", "san francisco", "miami", "denver", "vienna", "amsterdam",
        "edinburgh", "glasgow", "moscow", "cairo", "mexico city", "hong kong", "singapore", "lisbon", "athens",
    ),
    "weather": ("rain", "snow", "be sunny", "be windy", "be cold", "be hot", "freeze", "storm"),
    "hot": ("hot", "cold", "warm", "windy"),
    "genre": (
        "jazz", "rock", "classical music", "blues", "country", "reggae", "hip hop", "pop", "soul", "folk",
        "piano music", "relaxing music", "disco", "opera", "funk", "metal", "punk", "salsa", "techno",
    ),
    "playlist": ("workout", "morning", "party", "dinner", "sleep", "study", "running", "driving", "favorite"),
    "media_action": ("pause", "stop", "resume", "shuffle", "mute", "unmute"),
    "skip": ("skip", "repeat", "like", "replay"),
    "up_down": ("up", "down"),
    "destination": (
        "home", "work", "the airport", "the station", "the office", "the gym", "the hospital", "the park",
        "the mall", "the library", "the supermarket", "the bank", "school", "the beach", "the museum",
        "the city centre", "the nearest pharmacy",
    ),
    "shop": ("pharmacy", "petrol station", "gas station", "coffee shop", "restaurant", "bakery", "cash machine",
             "hotel", "pizza place", "parking garage", "bookshop", "hardware store"),
    "small": ("zero", "<digit>", "<teen>", "twenty"),
    "operator": ("plus", "minus", "times", "divided by"),
    "story": ("joke", "story", "riddle", "fun fact", "bedtime story"),
    "part_of_day": ("morning", "afternoon", "evening", "night"),
    "politeness": ("thanks", "thank you", "okay", "no"),
}


def _tokens(phrase: str) -> list[str]:
    return phrase.split()


def _slot(token: str) -> str | None:
    return token[1:-1] if token.startswith("<") and token.endswith(">") else None


@cache
def _expand_slot(name: str) -> tuple[str, ...]:
    return tuple(text for phrase in SLOTS[name] for text in _expand(phrase))


def _expand(phrase: str) -> tuple[str, ...]:
    """Every text `phrase` stands for, single-spaced."""
    texts = [""]
    for token in _tokens(phrase):
        name = _slot(token)
        options = _expand_slot(name) if name else (token,)
        texts = [f"{t} {o}" for t in texts for o in options]
    return tuple(" ".join(t.split()) for t in texts)


@cache
def _sentences() -> frozenset[str]:
    return frozenset(text for template in TEMPLATES for text in _expand(template))


def sentence_count() -> int:
    """How many distinct sentences the grammar can make (templates that overlap count a sentence once)."""
    return len(_sentences())


def all_sentences() -> list[str]:
    """Every distinct sentence of the grammar, sorted: for checks over the whole language."""
    return sorted(_sentences())


@cache
def _vocabulary() -> tuple[str, ...]:
    phrases = [*TEMPLATES, *(p for options in SLOTS.values() for p in options)]
    return tuple(sorted({t for p in phrases for t in _tokens(p) if not _slot(t)}))


def vocabulary() -> list[str]:
    """Every word a grammar sentence may hold, sorted and unique: the lexicon a decoder may spell."""
    return list(_vocabulary())


def _sample(phrase: str, rng: np.random.Generator) -> str:
    words = []
    for token in _tokens(phrase):
        name = _slot(token)
        words.append(_sample(SLOTS[name][int(rng.integers(len(SLOTS[name])))], rng) if name else token)
    return " ".join(" ".join(words).split())


def sample_sentences(rng: np.random.Generator, count: int) -> list[str]:
    """`count` sentences drawn from `rng`: a template uniformly, then each slot's phrase uniformly, recursively.

    Drawing per template (not per sentence) keeps short commands like "call mom" as common as long reminders.
    """
    return [_sample(TEMPLATES[int(rng.integers(len(TEMPLATES)))], rng) for _ in range(count)]
