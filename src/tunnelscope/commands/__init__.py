"""The subcommands of ``tunnelscope`` (``cli.py`` dispatches to them): one module each, with its
``HELP`` and ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)`` (the exit code)."""
