//! The epoch certificate: every record an epoch signs is a leaf of one Merkle tree whose root the
//! replicas threshold-sign once.
