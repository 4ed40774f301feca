"""hello: the whole life of the smallest program, start to exit.

One trivial future (``futures.submit(len, "hello")``), its result printed.
What counts is the wall time of the whole process (``python -m scoop -n 2
hello.py``), which bench/run.py measures: starting the workers, one round
trip, and shutting everything down. Prints ``RESULT hello <s> <checksum>``
(the in-program time is of the one future only).
"""

from harness import check, report, timed

from scoop import futures

if __name__ == "__main__":
    value, seconds = timed(lambda: futures.submit(len, "hello").result())
    check(value == 5, f"hello: len('hello') gave {value}")
    print("hello from", futures.__name__, flush=True)
    report("hello", seconds, value)
