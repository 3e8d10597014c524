"""What the gateway, the operator and the engines agree on, in one neutral package.

Nothing here imports any of the three components; each of them imports from here.
"""
