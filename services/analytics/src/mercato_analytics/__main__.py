"""``python -m mercato_analytics [serve | migrate | rebuild]`` (see ``mercato_analytics.commands``):
the kit's entry point for the service declared in ``app``."""

from mercato_analytics.app import DEFINITION

main = DEFINITION.main

if __name__ == "__main__":
    raise SystemExit(main())
