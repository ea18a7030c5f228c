//! Drive a stopped process from outside.
