"""Where each recipient's copy goes (router) and the agents and runner that carry it there."""
