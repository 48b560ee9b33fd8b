"""The speech-to-text track (`track: asr`): its entry module (track.py) and the modules only it uses."""
