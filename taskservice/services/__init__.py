"""Business rules: who may do what, validation, transactions. No gRPC here."""
