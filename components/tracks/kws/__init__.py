"""The keyword-spotting track (`track: kws`): its entry module; the keyword modules every track uses stay flat."""
