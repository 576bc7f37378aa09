"""drivelab's common library: scenes, simulator, networks, algorithms, replay, wire and telemetry."""
