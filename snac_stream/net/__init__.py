"""The network: WebSocket relay server, rooms, model endpoints, clients, sender and receiver."""
