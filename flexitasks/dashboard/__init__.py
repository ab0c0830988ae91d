"""``flexitasks dashboard``: a live page of the fleet's breakers (see ``server.py``)."""
