//! A Merkle tree over the shards of one broadcast, with inclusion proofs.
//!
//! Leaf `i` is `SHA-256(tagged(RBC_LEAF, [i as u32 LE, shard]))`; an inner node is
//! `SHA-256(tagged(RBC_NODE, [left, right]))`. The leaves are padded to a power of two with the
//! hash of the empty string under the leaf tag and index `u32::MAX`, which no real leaf has.

use fides_crypto::{domain, sha256_tagged};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The deepest tree: 1024 replicas need 10 levels.
pub const DEPTH_MAX: usize = 10;

fn leaf(index: u32, shard: &[u8]) -> Digest {
    sha256_tagged(domain::RBC_LEAF, &[&index.to_le_bytes(), shard])
}

fn inner(left: &Digest, right: &Digest) -> Digest {
    sha256_tagged(domain::RBC_NODE, &[left, right])
}

/// The tree over `shards`; levels from the leaves up.
#[derive(Debug)]
pub struct Tree {
    levels: Vec<Vec<Digest>>,
}

impl Tree {
    /// Build the tree over `shards` (at least one).
    pub fn new(shards: &[Vec<u8>]) -> Tree {
        let width = shards.len().max(1).next_power_of_two();
        let padding = leaf(u32::MAX, &[]);
        let mut level: Vec<Digest> =
            (0..width).map(|i| shards.get(i).map_or(padding, |shard| leaf(i as u32, shard))).collect();
        let mut levels = Vec::new();
        while level.len() > 1 {
            let next = level.chunks(2).map(|pair| inner(&pair[0], &pair[1])).collect();
            levels.push(std::mem::replace(&mut level, next));
        }
        levels.push(level);
        Tree { levels }
    }

    /// The root.
    pub fn root(&self) -> Digest {
        self.levels.last().and_then(|top| top.first()).copied().expect("a tree has a root")
    }

    /// The sibling path of leaf `index`, from the leaf up.
    pub fn path(&self, index: usize) -> Vec<Digest> {
        let mut path = Vec::with_capacity(self.levels.len());
        let mut position = index;
        for level in &self.levels[..self.levels.len() - 1] {
            path.push(level[position ^ 1]);
            position /= 2;
        }
        path
    }
}

/// The length of every path in a tree over `leaves` leaves.
pub fn depth(leaves: usize) -> usize {
    leaves.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Whether `shard` is leaf `index` of the tree with `root`, by `path`.
pub fn verify(root: &Digest, index: u32, shard: &[u8], path: &[Digest]) -> bool {
    if path.len() > DEPTH_MAX || (path.len() < 32 && u64::from(index) >> path.len() != 0) {
        return false;
    }
    let mut node = leaf(index, shard);
    for (level, sibling) in path.iter().enumerate() {
        node = if (index >> level) & 1 == 0 { inner(&node, sibling) } else { inner(sibling, &node) };
    }
    node == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for count in [1usize, 2, 3, 4, 7, 10, 31] {
            let shards: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; 5]).collect();
            let tree = Tree::new(&shards);
            let root = tree.root();
            for (i, shard) in shards.iter().enumerate() {
                let path = tree.path(i);
                assert_eq!(path.len(), depth(count));
                assert!(verify(&root, i as u32, shard, &path), "count {count} leaf {i}");
                assert!(!verify(&root, i as u32, b"other", &path));
                assert!(!verify(&root, (i as u32) ^ 1 | (1 << path.len()), shard, &path));
                if count > 1 {
                    assert!(!verify(&root, (i as u32) ^ 1, shard, &path));
                }
            }
        }
    }
}
