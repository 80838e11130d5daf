"""What the service does, apart from HTTP: federations, access, uploads, the round state machine."""
