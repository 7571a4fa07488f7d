"""What the inference service may connect to, decided in one place for every outbound request
it makes on a caller's behalf: image downloads and webhook deliveries. Strict URL parsing,
the address policy (public addresses only unless allowed) and the resolver that enforces it at
connect time, so a name rebound to an internal address after it was checked never gets a
connection."""
