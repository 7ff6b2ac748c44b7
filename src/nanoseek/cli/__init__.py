"""The ``nanoseek`` command: ``main.py`` parses, one module per subcommand."""
