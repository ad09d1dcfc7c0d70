from beoboot.cli import run

run()
