"""Runtimes: corestream run, the HTTP API, the Faust worker, operations commands, the demo."""
