from tricklab.cli.main import entry

entry()
