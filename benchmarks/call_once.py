"""One call in a new interpreter, as people write it by hand: ``subprocess`` and pickle.

The parent writes ``pickle.dumps((function, args))`` to this script's standard input and reads
the pickled result from its standard output.
"""

from __future__ import annotations

import pickle
import sys

if __name__ == "__main__":
    function, args = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps(function(*args), protocol=5))
