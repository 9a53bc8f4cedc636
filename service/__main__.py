"""``python -m service`` runs the ``mtrd`` command."""

from service.cli import main

main()
