"""The orders domain: errors, orders and money, the state machine and the rules. No I/O."""
