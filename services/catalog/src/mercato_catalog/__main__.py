"""``python -m mercato_catalog [serve | migrate]``: the kit's entry point for the service
declared in ``app`` (``migrate`` creates the MongoDB indexes and exits)."""

from mercato_catalog.app import DEFINITION

main = DEFINITION.main

if __name__ == "__main__":
    raise SystemExit(main())
