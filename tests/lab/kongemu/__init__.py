"""A faithful emulator of the Kong Gateway CLI and running node, for the lab.

The contract is ../shared/reference/kong-facts.md; see ../ARCHITECTURE.md.
"""
