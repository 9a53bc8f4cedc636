"""``python -m mtrd`` runs the ``mtrd`` command."""

from mtrd.cli import main

main()
