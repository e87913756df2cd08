"""``python -m eventbus.cli``: the same as the ``eventbus`` script."""

from eventbus.cli import main

main()
