"""Native kernels whistle-stop compiles for the machine it runs on (kernels/build.py)."""
