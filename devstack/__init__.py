"""The local development stack's own parts: a development OIDC issuer and a generator of signed deliveries.

Nothing here runs in production (the receiver image copies only ``pull_events`` and ``receiver``): these
modules let ``scripts/stack`` run the receiver with authentication on, and let tests and scripts sign
deliveries the way Chainguard does.
"""
