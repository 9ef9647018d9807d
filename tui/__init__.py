"""The overnight dashboard (`overnight tui`): a read-only Textual client of a home that steers by control files."""
