"""The broker: scene batches (credit broker) and the inference load balancer."""
