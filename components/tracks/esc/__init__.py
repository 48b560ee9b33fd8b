"""The environmental sound classification track (`track: esc`): its entry module and the modules only it uses."""
