"""Pure parsers: console logs, dmesg and probe output in, typed facts out. No I/O."""
