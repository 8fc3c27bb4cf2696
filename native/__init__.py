"""The C++ engine whistle-stop compiles for the machine it runs on (native/build.py)."""
