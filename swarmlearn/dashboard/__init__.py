"""The swarm dashboard: a local web page that watches one node's API (``swarmlearn dashboard``).

``upstream`` talks to the node API over mutual TLS with the operator's certificate and turns
every failure into one sentence a person can act on; ``model`` shapes the API's JSON into what
the pages show; ``render`` and ``charts`` write the HTML and inline SVG; ``server`` serves the
pages on 127.0.0.1 with live updates by server-sent events. No JavaScript framework, nothing
fetched from the internet: the front end is one small CSS and one small JS file beside this
module.
"""
