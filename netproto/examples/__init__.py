"""Small example services: what a netproto plugin looks like at its simplest."""
