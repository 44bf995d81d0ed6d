//! [`BoundedList`]: a fixed-capacity list that serialises like a postcard
//! sequence and refuses, while decoding, to hold more than `N` items.
//!
//! The wire types must decode without an allocator, so every repeated field
//! is a `BoundedList` whose capacity is a protocol limit. Decoding stops at
//! the first element beyond the capacity (or earlier, when the announced
//! length already exceeds it), so a hostile length prefix costs nothing.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// The list is full: pushing would exceed its capacity `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapacityError {
    /// The capacity that was exceeded.
    pub capacity: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "list capacity of {} items exceeded", self.capacity)
    }
}

/// Up to `N` items of `T` stored inline (no allocation).
///
/// Only the first [`len`](Self::len) slots are meaningful; equality, `Debug`
/// and serialisation look at those alone.
#[derive(Clone, Copy)]
pub struct BoundedList<T, const N: usize> {
    len: usize,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> BoundedList<T, N> {
    /// The capacity `N`.
    pub const CAPACITY: usize = N;

    /// An empty list.
    pub fn new() -> Self {
        BoundedList {
            len: 0,
            items: [T::default(); N],
        }
    }

    /// A list holding a copy of `items`, or an error if there are more than `N`.
    pub fn from_slice(items: &[T]) -> Result<Self, CapacityError> {
        let mut list = Self::new();
        for item in items {
            list.push(*item)?;
        }
        Ok(list)
    }

    /// Appends `item`, or returns an error (and leaves the list unchanged)
    /// when the list is full.
    pub fn push(&mut self, item: T) -> Result<(), CapacityError> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(CapacityError { capacity: N }),
        }
    }
}

impl<T, const N: usize> BoundedList<T, N> {
    /// The items, in order.
    pub fn as_slice(&self) -> &[T] {
        // `len <= N` is an invariant kept by `push`; `get` keeps this
        // panic-free even if it were ever broken.
        self.items.get(..self.len).unwrap_or(&[])
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the list holds no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the items.
    pub fn iter(&self) -> core::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

impl<T: Copy + Default, const N: usize> Default for BoundedList<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PartialEq, const N: usize> PartialEq for BoundedList<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq, const N: usize> Eq for BoundedList<T, N> {}

impl<T: fmt::Debug, const N: usize> fmt::Debug for BoundedList<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(feature = "defmt")]
impl<T: defmt::Format, const N: usize> defmt::Format for BoundedList<T, N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", self.as_slice())
    }
}

impl<'l, T, const N: usize> IntoIterator for &'l BoundedList<T, N> {
    type Item = &'l T;
    type IntoIter = core::slice::Iter<'l, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedList<T, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A slice iterator has an exact length, so postcard writes the
        // length prefix up front (it cannot serialise unknown lengths).
        serializer.collect_seq(self.as_slice())
    }
}

impl<'de, T, const N: usize> Deserialize<'de> for BoundedList<T, N>
where
    T: Deserialize<'de> + Copy + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T, const N: usize>(PhantomData<T>);

        impl<'de, T, const N: usize> Visitor<'de> for ListVisitor<T, N>
        where
            T: Deserialize<'de> + Copy + Default,
        {
            type Value = BoundedList<T, N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a sequence of at most {N} items")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Reject an oversized announced length before decoding any
                // element: the hint comes straight from the length prefix.
                if seq.size_hint().is_some_and(|n| n > N) {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                let mut list = BoundedList::new();
                while let Some(item) = seq.next_element()? {
                    if list.push(item).is_err() {
                        return Err(A::Error::invalid_length(N + 1, &self));
                    }
                }
                Ok(list)
            }
        }

        deserializer.deserialize_seq(ListVisitor::<T, N>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_stops_at_capacity() {
        let mut l: BoundedList<u8, 2> = BoundedList::new();
        assert_eq!(l.push(1), Ok(()));
        assert_eq!(l.push(2), Ok(()));
        assert_eq!(l.push(3), Err(CapacityError { capacity: 2 }));
        assert_eq!(l.as_slice(), &[1, 2]);
    }

    #[test]
    fn equality_ignores_unused_slots() {
        let a: BoundedList<u8, 3> = BoundedList::from_slice(&[7]).unwrap();
        let mut b: BoundedList<u8, 3> = BoundedList::from_slice(&[7, 9]).unwrap();
        assert_ne!(a, b);
        b.len = 1;
        assert_eq!(a, b);
    }

    #[test]
    fn decoding_refuses_more_than_capacity() {
        let three: BoundedList<u8, 3> = BoundedList::from_slice(&[1, 2, 3]).unwrap();
        let mut buf = [0u8; 16];
        let bytes = postcard::to_slice(&three, &mut buf).unwrap();
        assert!(postcard::from_bytes::<BoundedList<u8, 2>>(bytes).is_err());
        assert_eq!(
            postcard::from_bytes::<BoundedList<u8, 3>>(bytes).unwrap(),
            three
        );
        // A huge announced length with no elements behind it fails early.
        assert!(postcard::from_bytes::<BoundedList<u8, 3>>(&[0xff, 0xff, 0x03]).is_err());
    }
}
