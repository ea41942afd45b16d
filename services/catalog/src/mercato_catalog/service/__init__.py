"""The catalog's use cases, between the inbound adapters (api, jobs) and the domain rules.

Each use case reads through the store, lets the domain decide, decides which events the change
emits (built by ``publish``) and hands the write and its events to the store; it invalidates
the read cache after every product write. ``products`` and ``categories`` serve the product
RPCs, ``stock`` moves reserved stock, ``reservations`` is the reservation saga and ``upkeep``
the sweeper's work.
"""
