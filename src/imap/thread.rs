//! THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms over the fields of
//! [`sortkeys`](super::sortkeys), and the thread-list wire form (§4).
//!
//! Pure; never panics on any input. Every walk over a tree is iterative (building, sorting,
//! rendering and dropping), so a reply chain of any depth cannot overflow the stack.

use std::collections::HashMap;

use super::sortkeys::{casemap_cmp, SortItem};

/// A thread tree node: `msg` is an index into the items slice, or None for a dummy (missing
/// parent) node. (The derived `Debug` recurses; dropping does not.)
#[derive(Debug, Default)]
pub struct Node {
    pub msg: Option<usize>,
    pub children: Vec<Node>,
}

impl Node {
    /// A message without children.
    pub fn leaf(msg: usize) -> Node {
        Node {
            msg: Some(msg),
            children: Vec::new(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.children);
        while let Some(mut node) = stack.pop() {
            stack.append(&mut node.children);
        }
    }
}

/// Sent-date order (RFC 5256 §2.2), ties by sequence number, then by index.
type Key = (i64, u32, usize);

fn key(index: usize, item: &SortItem<'_>) -> Key {
    (item.sent_date(), item.seq, index)
}

/// ORDEREDSUBJECT: messages grouped by base subject, each group in sent-date order; the
/// first message of a group is the thread, the others its children (no grandchildren);
/// threads in the order of their first message's sent date.
pub fn ordered_subject(items: &[SortItem<'_>]) -> Vec<Node> {
    let mut order: Vec<(usize, &SortItem<'_>)> = items.iter().enumerate().collect();
    order.sort_by(|(i, a), (j, b)| {
        casemap_cmp(&a.fields.subject, &b.fields.subject).then(key(*i, a).cmp(&key(*j, b)))
    });
    let mut threads: Vec<(Key, &str, Node)> = Vec::new();
    for (i, item) in order {
        let subject = item.fields.subject.as_str();
        match threads.last_mut() {
            Some((_, first, node)) if casemap_cmp(first, subject).is_eq() => {
                node.children.push(Node::leaf(i));
            }
            _ => threads.push((key(i, item), subject, Node::leaf(i))),
        }
    }
    threads.sort_by_key(|(k, _, _)| *k);
    threads.into_iter().map(|(_, _, node)| node).collect()
}

/// REFERENCES: RFC 5256 §3 steps 1–6 (derived from JWZ's algorithm): links by References /
/// In-Reply-To, gathers the parentless under a root, prunes dummies, merges threads by base
/// subject and sorts every set of siblings by sent date.
pub fn references(items: &[SortItem<'_>]) -> Vec<Node> {
    let mut table = Table::new(items);
    table.link_all();
    let roots = table.roots();
    let roots = table.prune(roots);
    let roots = table.sort_top(roots);
    let roots = table.group_by_subject(roots);
    let roots = table.sort_all(roots);
    table.into_nodes(&roots)
}

/// A message or dummy while threading: arena entries linked by index.
#[derive(Default)]
struct Container {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Table<'i, 'a> {
    items: &'i [SortItem<'a>],
    nodes: Vec<Container>,
    /// Message-ID → container; each ID belongs to the first message (by sequence number)
    /// that has it, later duplicates stay out of the table (a unique ID each, step 1).
    ids: HashMap<String, usize>,
    /// The container of each item.
    own: Vec<usize>,
}

impl<'i, 'a> Table<'i, 'a> {
    fn new(items: &'i [SortItem<'a>]) -> Self {
        let mut table = Table {
            items,
            nodes: Vec::with_capacity(items.len()),
            ids: HashMap::new(),
            own: vec![0; items.len()],
        };
        for (i, item) in by_sequence(items) {
            let c = table.push(Some(i));
            if let Some(slot) = table.own.get_mut(i) {
                *slot = c;
            }
            if let Some(id) = item
                .fields
                .message_id
                .as_deref()
                .filter(|id| !id.is_empty())
            {
                table.ids.entry(id.to_string()).or_insert(c);
            }
        }
        table
    }

    fn push(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Container {
            msg,
            ..Container::default()
        });
        self.nodes.len() - 1
    }

    /// The container of a referenced ID, a new dummy if no message has it.
    fn container_for(&mut self, id: &str) -> usize {
        if let Some(&c) = self.ids.get(id) {
            return c;
        }
        let c = self.push(None);
        self.ids.insert(id.to_string(), c);
        c
    }

    /// Step 1 for every message, in sequence-number order.
    fn link_all(&mut self) {
        for (i, item) in by_sequence(self.items) {
            let Some(&c) = self.own.get(i) else { continue };
            let mut refs: Vec<usize> = Vec::with_capacity(item.fields.references.len());
            for id in item.fields.references.iter().filter(|id| !id.is_empty()) {
                let r = self.container_for(id);
                if r != c {
                    refs.push(r);
                }
            }
            // 1.A: each reference the parent of the next, unless already parented.
            for pair in refs.windows(2) {
                if let [p, ch] = *pair {
                    if self.nodes[ch].parent.is_none() && !self.would_loop(p, ch) {
                        self.link(p, ch);
                    }
                }
            }
            // 1.B: the last reference is the parent of the message itself.
            let parent = refs.last().copied();
            if self.nodes[c].parent != parent {
                self.unlink(c);
                if let Some(p) = parent.filter(|&p| !self.would_loop(p, c)) {
                    self.link(p, c);
                }
            }
        }
    }

    /// Whether making `parent` the parent of `child` would make a loop: `parent` is `child`
    /// or one of its descendants.
    fn would_loop(&self, parent: usize, child: usize) -> bool {
        if parent == child {
            return true;
        }
        if self.nodes[child].children.is_empty() {
            return false;
        }
        let mut cur = parent;
        while let Some(up) = self.nodes[cur].parent {
            if up == child {
                return true;
            }
            cur = up;
        }
        false
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    /// Step 2: the containers without a parent.
    fn roots(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&c| self.nodes[c].parent.is_none())
            .collect()
    }

    /// Step 3: dummies without children go; below the top, a dummy's children take its
    /// place; at the top, only a single child does.
    fn prune(&mut self, roots: Vec<usize>) -> Vec<usize> {
        for c in self.pre_order(&roots).into_iter().rev() {
            let kids = std::mem::take(&mut self.nodes[c].children);
            let mut kept = Vec::with_capacity(kids.len());
            for k in kids {
                if self.nodes[k].msg.is_some() {
                    kept.push(k);
                } else {
                    kept.append(&mut self.nodes[k].children);
                }
            }
            self.nodes[c].children = kept;
        }
        let mut top = Vec::with_capacity(roots.len());
        for r in roots {
            match (self.nodes[r].msg, self.nodes[r].children.as_slice()) {
                (None, []) => {}
                (None, [only]) => top.push(*only),
                _ => top.push(r),
            }
        }
        top
    }

    /// Step 4: the top level by sent date, a dummy by its earliest child.
    fn sort_top(&mut self, mut roots: Vec<usize>) -> Vec<usize> {
        for &r in &roots {
            if self.nodes[r].msg.is_none() {
                self.sort_children(r);
            }
        }
        self.sort_list(&mut roots);
        roots
    }

    /// Step 6: every set of siblings by sent date, the deepest first.
    fn sort_all(&mut self, mut roots: Vec<usize>) -> Vec<usize> {
        for c in self.pre_order(&roots).into_iter().rev() {
            self.sort_children(c);
        }
        self.sort_list(&mut roots);
        roots
    }

    fn sort_children(&mut self, c: usize) {
        let mut kids = std::mem::take(&mut self.nodes[c].children);
        self.sort_list(&mut kids);
        self.nodes[c].children = kids;
    }

    fn sort_list(&self, list: &mut [usize]) {
        list.sort_by_cached_key(|&c| self.sort_key(c));
    }

    /// A message's key, or a dummy's first (message) descendant's.
    fn sort_key(&self, mut c: usize) -> Key {
        loop {
            let node = &self.nodes[c];
            if let Some(i) = node.msg {
                return self
                    .items
                    .get(i)
                    .map_or((i64::MAX, u32::MAX, i), |m| key(i, m));
            }
            match node.children.first() {
                Some(&first) => c = first,
                None => return (i64::MAX, u32::MAX, usize::MAX),
            }
        }
    }

    /// The message whose subject is a thread's: the message, or a dummy's first child's.
    fn subject_item(&self, c: usize) -> Option<&'i SortItem<'a>> {
        let node = &self.nodes[c];
        let msg = node
            .msg
            .or_else(|| node.children.first().and_then(|&k| self.nodes[k].msg))?;
        self.items.get(msg)
    }

    fn is_dummy(&self, c: usize) -> bool {
        self.nodes[c].msg.is_none()
    }

    fn is_reply(&self, c: usize) -> bool {
        let msg = self.nodes[c].msg;
        msg.and_then(|i| self.items.get(i))
            .is_some_and(|m| m.fields.reply)
    }

    /// Step 5: threads at the top with the same base subject merge.
    fn group_by_subject(&mut self, roots: Vec<usize>) -> Vec<usize> {
        let mut subjects: HashMap<String, usize> = HashMap::new();
        // 5.B: one thread per subject: a dummy before a message, a message before a reply.
        for &r in &roots {
            let Some(subject) = self.thread_subject(r) else {
                continue;
            };
            match subjects.get(&subject) {
                None => {
                    subjects.insert(subject, r);
                }
                Some(&t) => {
                    let replace = !self.is_dummy(t)
                        && (self.is_dummy(r) || (self.is_reply(t) && !self.is_reply(r)));
                    if replace {
                        subjects.insert(subject, r);
                    }
                }
            }
        }
        // 5.C: merge the others into it.
        let mut at_top = vec![false; self.nodes.len()];
        for &r in &roots {
            at_top[r] = true;
        }
        let mut top = roots.clone();
        for r in roots {
            if !at_top.get(r).copied().unwrap_or(false) {
                continue;
            }
            let Some(subject) = self.thread_subject(r) else {
                continue;
            };
            let Some(&t) = subjects.get(&subject) else {
                continue;
            };
            if t == r {
                continue;
            }
            if let Some(dummy) = self.merge(t, r, &mut at_top) {
                subjects.insert(subject, dummy);
                top.push(dummy);
            }
        }
        top.retain(|&c| at_top.get(c).copied().unwrap_or(false));
        top
    }

    /// Merges top-level thread `r` into `t` (5.C.iv); returns a new dummy holding both when
    /// one was made.
    fn merge(&mut self, t: usize, r: usize, at_top: &mut Vec<bool>) -> Option<usize> {
        if let Some(flag) = at_top.get_mut(r) {
            *flag = false;
        }
        if self.is_dummy(t) && self.is_dummy(r) {
            let mut kids = std::mem::take(&mut self.nodes[r].children);
            self.nodes[t].children.append(&mut kids);
            return None;
        }
        if self.is_dummy(t) || (self.is_reply(r) && !self.is_reply(t)) {
            self.nodes[t].children.push(r);
            return None;
        }
        let dummy = self.push(None);
        self.nodes[dummy].children = vec![t, r];
        at_top.resize(self.nodes.len(), false);
        if let Some(flag) = at_top.get_mut(t) {
            *flag = false;
        }
        if let Some(flag) = at_top.get_mut(dummy) {
            *flag = true;
        }
        Some(dummy)
    }

    /// A thread's base subject as a table key, None if empty.
    fn thread_subject(&self, c: usize) -> Option<String> {
        let subject = &self.subject_item(c)?.fields.subject;
        (!subject.is_empty()).then(|| subject.to_ascii_uppercase())
    }

    /// The containers under `roots`, parents before children (each once).
    fn pre_order(&self, roots: &[usize]) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::new();
        let mut stack: Vec<usize> = roots.iter().rev().copied().collect();
        while let Some(c) = stack.pop() {
            if std::mem::replace(&mut seen[c], true) {
                continue;
            }
            order.push(c);
            stack.extend(self.nodes[c].children.iter().rev());
        }
        order
    }

    /// The finished tree, built bottom-up.
    fn into_nodes(self, roots: &[usize]) -> Vec<Node> {
        let mut built: Vec<Option<Node>> = Vec::new();
        built.resize_with(self.nodes.len(), || None);
        for c in self.pre_order(roots).into_iter().rev() {
            let children = self.nodes[c]
                .children
                .iter()
                .filter_map(|&k| built[k].take())
                .collect();
            built[c] = Some(Node {
                msg: self.nodes[c].msg,
                children,
            });
        }
        roots.iter().filter_map(|&r| built[r].take()).collect()
    }
}

/// Items with their indexes, in sequence-number order.
fn by_sequence<'i, 'a>(items: &'i [SortItem<'a>]) -> Vec<(usize, &'i SortItem<'a>)> {
    let mut order: Vec<(usize, &SortItem<'a>)> = items.iter().enumerate().collect();
    order.sort_by_key(|(i, item)| (item.seq, *i));
    order
}

/// The IMAP thread-list form (RFC 5256 §4), numbers from `number(index)`: `(1 2)(3 (4)(5))`.
/// A message with one child continues its list (`(3 6 (4 23)(44 7 96))`); dummies are not
/// printed, their children standing in their place (`((3)(5))` at the top).
pub fn render(threads: &[Node], number: impl Fn(usize) -> u32) -> String {
    let mut out = String::new();
    for thread in threads {
        if thread.msg.is_some() {
            list(thread, &number, &mut out);
            continue;
        }
        match messages(&thread.children).as_slice() {
            [] => {}
            [only] => list(only, &number, &mut out),
            many => {
                out.push('(');
                for m in many {
                    list(m, &number, &mut out);
                }
                out.push(')');
            }
        }
    }
    out
}

/// The message nodes among `children`, a dummy's children (recursively) in its place.
fn messages(children: &[Node]) -> Vec<&Node> {
    let mut out = Vec::new();
    let mut stack = vec![children.iter()];
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(node) if node.msg.is_some() => out.push(node),
            Some(node) => stack.push(node.children.iter()),
            None => {
                stack.pop();
            }
        }
    }
    out
}

enum Task<'n> {
    Open,
    Close,
    Members(&'n Node),
}

/// `(` thread-members `)` for a message node, iteratively.
fn list(node: &Node, number: &impl Fn(usize) -> u32, out: &mut String) {
    let mut tasks = vec![Task::Close, Task::Members(node), Task::Open];
    while let Some(task) = tasks.pop() {
        match task {
            Task::Open => out.push('('),
            Task::Close => out.push(')'),
            Task::Members(n) => members(n, number, out, &mut tasks),
        }
    }
}

/// The node's number and its single-child chain; more children are queued as nested lists.
fn members<'n>(
    mut node: &'n Node,
    number: &impl Fn(usize) -> u32,
    out: &mut String,
    tasks: &mut Vec<Task<'n>>,
) {
    loop {
        if let Some(m) = node.msg {
            out.push_str(&number(m).to_string());
        }
        match messages(&node.children).as_slice() {
            [] => return,
            [only] => {
                out.push(' ');
                node = *only;
            }
            many => {
                out.push(' ');
                for m in many.iter().rev() {
                    tasks.extend([Task::Close, Task::Members(m), Task::Open]);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
