from alignkit.cli import run

run()
