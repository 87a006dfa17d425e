"""The run folder: its files, its item index, its writers' lock."""
