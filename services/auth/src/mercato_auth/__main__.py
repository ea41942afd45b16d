"""``python -m mercato_auth [serve | migrate | create-admin | create-client | rotate-signing-key]``
(see ``mercato_auth.commands``): the kit's entry point for the service declared in ``app``."""

from mercato_auth.app import DEFINITION

main = DEFINITION.main

if __name__ == "__main__":
    raise SystemExit(main())
