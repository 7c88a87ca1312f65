from .tap import run

run()
