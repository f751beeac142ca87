"""The SL side of a sync round (sans-IO): the round core and its parts, its messages, and the
simulator scenarios of whole swarm nodes.
"""
