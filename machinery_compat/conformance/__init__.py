"""``machinery-compat conformance``: check your Go Machinery version against this package on
your own broker.

.. code-block:: console

    $ pip install 'machinery-compat[conformance,redis]'     # and Go 1.22+ in PATH
    $ machinery-compat conformance --broker redis://127.0.0.1:6379/3
    $ machinery-compat conformance --config config.yml --machinery v2.0.15 --json
    $ machinery-compat conformance --broker amqp://guest:guest@rabbit:5672/ \\
          --backend redis://redis:6379/0 --junit-xml conformance.xml --markdown RESULTS.md

The Go side is two probe programs (:mod:`.probes`) built from the sources shipped in this
package against the Machinery version asked for; the Python side is an app with the same task
names (:mod:`.pyside`); :mod:`.checks` is the matrix, :mod:`.cleanup` removes what a run
created (only names with its random ``mcconf-<hex>`` prefix), :mod:`.report` writes the table,
JSON, JUnit XML and Markdown.  See docs/conformance.md.
"""

from .probes import PINNED, ConformanceError

__all__ = ["PINNED", "ConformanceError"]
