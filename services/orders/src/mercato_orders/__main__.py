"""``python -m mercato_orders [serve | migrate | reconcile]`` (see ``mercato_orders.commands``):
the kit's entry point for the service declared in ``app``."""

from mercato_orders.app import DEFINITION

main = DEFINITION.main

if __name__ == "__main__":
    raise SystemExit(main())
