//! A small const-based bit-set newtype, so that every userfaultfd bitmask
//! (features, ioctls, register modes, per-ioctl modes, page-fault flags) gets
//! the same typed API without pulling in the `bitflags` crate.
//!
//! Each generated type wraps the kernel's `u64` and keeps unknown bits (a newer
//! kernel may report features this code does not name yet): `Debug` and
//! `Display` print the known names and the unknown rest in hex, e.g.
//! `EVENT_FORK | THREAD_ID | 0x400000`.

/// Declares a `Copy` bit-set newtype over `u64` with named constants.
macro_rules! flag_set {
    (
        $(#[$outer:meta])*
        pub struct $name:ident;
        $(
            $(#[$inner:meta])*
            const $flag:ident = $value:expr;
        )*
    ) => {
        $(#[$outer])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            $(
                $(#[$inner])*
                pub const $flag: Self = Self($value as u64);
            )*

            /// Every bit this type has a name for, with its name.
            const NAMED: &'static [(&'static str, Self)] = &[
                $((stringify!($flag), Self::$flag),)*
            ];

            /// The empty set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// Every bit this type has a name for.
            pub const fn all_known() -> Self {
                Self(0 $(| ($value as u64))*)
            }

            /// Wraps raw bits as reported by (or given to) the kernel,
            /// keeping bits this type has no name for.
            pub const fn from_bits_retain(bits: u64) -> Self {
                Self(bits)
            }

            /// The raw bits, as the kernel expects them.
            pub const fn bits(self) -> u64 {
                self.0
            }

            /// True when no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// True when every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when `self` and `other` share at least one bit.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// Bits set in either.
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            /// Bits set in both.
            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }

            /// Bits set in `self` but not in `other`.
            pub const fn difference(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }

            /// Bits set in `self` that this type has no name for.
            pub const fn unknown(self) -> Self {
                self.difference(Self::all_known())
            }
        }

        impl ::core::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                self.union(rhs)
            }
        }

        impl ::core::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                *self = self.union(rhs);
            }
        }

        impl ::core::ops::BitAnd for $name {
            type Output = Self;
            fn bitand(self, rhs: Self) -> Self {
                self.intersection(rhs)
            }
        }

        impl ::core::ops::Sub for $name {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                self.difference(rhs)
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                if self.is_empty() {
                    return f.write_str("(none)");
                }
                let mut first = true;
                for (name, flag) in Self::NAMED {
                    if self.contains(*flag) && !flag.is_empty() {
                        if !first {
                            f.write_str(" | ")?;
                        }
                        f.write_str(name)?;
                        first = false;
                    }
                }
                let unknown = self.unknown();
                if !unknown.is_empty() {
                    if !first {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{:#x}", unknown.0)?;
                }
                Ok(())
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
    };
}

pub(crate) use flag_set;
