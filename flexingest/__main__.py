from flexingest.cli import cli

cli()
