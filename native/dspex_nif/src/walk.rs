//! Iterative conversion of nested data (terms, parsed JSON, protobuf values): an explicit
//! stack of open containers instead of recursion, so no nesting depth a caller sends can
//! exhaust a scheduler's stack.

/// What one item of a walk becomes: a finished output, or a container whose items come next.
pub enum Step<O, C> {
    /// A finished output.
    Done(O),
    /// A container whose items come next.
    Open(C),
}

/// A container being filled during a walk.
pub trait Fill<I, O> {
    /// Takes the output of the item it handed out last (`None` the first time) and hands
    /// out its next item, or `None` once all are done.
    fn next(&mut self, done: Option<O>) -> Result<Option<I>, String>;
    /// The finished container.
    fn close(self) -> Result<O, String>;
}

/// Converts `root` depth first with an explicit stack of open containers: `step` turns an
/// item into an output or a container (it is told how many containers are open).
pub fn walk<I, O, C: Fill<I, O>>(
    root: I,
    mut step: impl FnMut(I, usize) -> Result<Step<O, C>, String>,
) -> Result<O, String> {
    let mut stack: Vec<C> = Vec::new();
    let mut next = Some(root);
    loop {
        let mut done = match next.take() {
            Some(item) => match step(item, stack.len())? {
                Step::Done(out) => Some(out),
                Step::Open(container) => {
                    stack.push(container);
                    None
                }
            },
            None => None,
        };
        loop {
            let Some(top) = stack.last_mut() else {
                return done.ok_or_else(|| "empty".to_string());
            };
            if let Some(item) = top.next(done.take())? {
                next = Some(item);
                break;
            }
            done = match stack.pop() {
                Some(finished) => Some(finished.close()?),
                None => unreachable!("the stack was not empty"),
            };
        }
    }
}
