
@* The synchronized FIFO list.
The acceptor hands sockets to the workers through a {\it synchronized FIFO
list}: a |std::list| with a mutex and a condition variable around it, so that
one thread may put items at the back while others take them from the front.
IAWLB's class was called \&{SyncedList}; it lived in \.{SyncedList.hpp}, a
header because it is a template, and had two operations, |enqueue| and |pop|
(``which I should have called dequeue'', its author admits). We keep the name,
the file, the two operations and the |std::list| inside. We change what
happens under the lock.

This chapter tangles \.{SyncedList.hpp}, a header of its own that knows
nothing about sockets: the unit tests instantiate it with plain integers, and
the balancer (its workers' |inbox|) with accepted sockets.

@ IAWLB's list was correct only in the easy cases. Four defects, each of which
this chapter removes:
@^IAWLB, departures from@>

\smallskip
\item{1.} {\it Every |enqueue| woke every waiting thread.} Its |wakeup| called
|pthread_cond_broadcast|. With eight idle workers, one new socket woke eight
threads; one of them took the socket and seven went back to sleep after
fighting over the mutex. The seed itself calls this ``inefficient'' in its last
chapter. We wake as many threads as there are new items, and none when nobody
waits.
\item{2.} {\it The batch |enqueue| was sketched but wrong.} It inserted the new
items at |list_.cbegin()|, the {\it front}, so a batch overtook the sockets
already waiting: a FIFO that is not first-in, first-out. Ours splices the batch
at the back, in constant time, under one lock and with one wake-up step.
\item{3.} {\it There was no way to stop.} A thread blocked in |pop| stayed
blocked forever, so the program could never end its workers. Our |close|
releases every waiting thread, and |pop| tells them the list is finished.
\item{4.} {\it Return codes were ignored.} |pthread_mutex_lock| and friends
were called and their results dropped, and the mutex and the condition were
created in a constructor and destroyed in a destructor written by hand. We use
|std::mutex|, |std::condition_variable| and |std::lock_guard|, which cannot be
forgotten on an early return or an exception.
\smallskip

\noindent Besides |close| (defect~3), two operations are new. A {\it timed}
|pop| gives up after a time limit (tests use it to wait without hanging),
and |drain| takes everything
waiting at once without blocking: the balancer's workers never block on the
list, because they already sleep in |epoll_wait|; they learn that sockets are
waiting from an |eventfd| and then drain (|@<Take the sockets waiting in the inbox@>|).

@ The contract, which the unit tests in \.{tests/test\_unit.cpp} check:

\smallskip
\item{$\bullet$} |enqueue(e)| appends one item; |enqueue(batch)| appends every
item of a |std::list| in order and leaves the batch empty. Both return the
number of items that were waiting {\it before} the call. A return of~0 means
the list went from empty to non-empty: a consumer that sleeps somewhere else
than on our condition variable must be told (the worker's |eventfd|). Any
thread may call them. Enqueueing on a closed list is a caller error that we
check: it throws |std::logic_error|, because the item would otherwise be lost
silently.
\item{$\bullet$} |pop(&x)| blocks until an item is there and moves it into~|x|,
returning |true|; once the list is closed {\it and} empty it returns |false|.
|pop(&x, limit)| is the same with a time limit; it returns |false| on timeout
too. Items enqueued before |close| are still delivered: closing stops the
producers, not the consumers.
\item{$\bullet$} |drain()| returns everything waiting, possibly nothing, and
never blocks.
\item{$\bullet$} |close()| marks the list closed and wakes every thread
blocked in |pop|.
\smallskip

\noindent Every operation takes the lock once, for a time that does not depend
on the number of items: |push_back|, |splice| and |swap| of a |std::list| are
constant-time. That is the reason to keep IAWLB's |std::list| rather than a
|std::deque|: a batch of a thousand sockets is moved by relinking two pointers,
not by copying a thousand elements while other threads wait for the lock.

@ The header has the usual shape: the includes, then the class. What the lock
protects is stated where the members are declared.

@(SyncedList.hpp@>=
#ifndef IAWLB_SYNCEDLIST_HPP
#define IAWLB_SYNCEDLIST_HPP
@<SyncedList includes@>@;
template <typename T>@/
class SyncedList {@/
public:@/
  @<Constructor and destructor@>@;
  @<Pop and enqueue@>@;
  @<Drain and close@>@;
private:@/
  @<Concurrency management@>@;
  @<Members of |SyncedList|@>@;
};
#endif

@ One mutex guards all the state; the condition variable is how a consumer
sleeps until that state changes. A waiting thread is counted in |waiting_| so
that a producer knows how many threads it may usefully wake.
@^lock order@>

@<Members of |SyncedList|@>=
mutable std::mutex m_; /* guards |list_|, |closed_| and |waiting_| */
std::condition_variable c_; /* notified when |list_| grows or |closed_| is set */
std::list<T> list_; /* the items, oldest at the front */
bool closed_ = false; /* no more |enqueue| calls will come */
std::size_t waiting_ = 0; /* threads blocked in |pop| */

@ The header includes only what it uses: the standard library's list, mutex,
condition variable and clock.

@<SyncedList includes@>=
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <list>
#include <mutex>
#include <stdexcept>

@ IAWLB's constructor initialised a |pthread_mutex_t| and a |pthread_cond_t|
and its destructor destroyed them. A |std::mutex| and a
|std::condition_variable| are ready when constructed and clean up after
themselves, so nothing is left to write but the rule that a list is never
copied: two copies would have two mutexes, and neither would protect the
other's items.
@^IAWLB, departures from@>

@<Constructor and destructor@>=
SyncedList() = default;@/
SyncedList(const SyncedList &) = @[delete@];@/
SyncedList &operator=(const SyncedList &) = @[delete@];

@ |enqueue| appends under the lock and counts, while it still holds the lock,
how many sleeping threads are worth waking: one per new item, but never more
than are waiting. It notifies them after unlocking. Notifying while holding
the mutex is also correct, but the woken thread would run only to block at
once on the mutex the producer still holds.

No wake-up can be lost by notifying late. A consumer that found the list empty
was counted in |waiting_| and went to sleep {\it inside} |wait|, which releases
the mutex and starts waiting in one atomic step; the producer could take the
mutex only after that, so when it reads |waiting_| the consumer is already a
sleeper that |notify_one| will reach.
@^lost wake-up@>

Items are moved, not copied, so the list also carries move-only types such as
the balancer's accepted sockets, whose descriptor must have exactly one owner.

@<Pop and enqueue@>=
std::size_t enqueue(T e)
{
  std::size_t before, wake;
  {@+std::lock_guard<std::mutex> lock(m_);
    @<Throw if the list is closed@>@;
    before = list_.size();
    list_.push_back(std::move(e));
    wake = waiting_ > 0 ? 1 : 0;
  }
  wakeup(wake);
  return before;
}

@ The batch |enqueue| is the one IAWLB's author wanted in ``Corners of slight
improvements'' and did not finish. |splice| moves the nodes of |batch| to the
end of |list_| without allocating or copying, and leaves |batch| empty, so the
caller may reuse it.
@^IAWLB, departures from@>

@<Pop and enqueue@>=
std::size_t enqueue(std::list<T> &batch)
{
  std::size_t before, wake;
  {@+std::lock_guard<std::mutex> lock(m_);
    @<Throw if the list is closed@>@;
    before = list_.size();
    wake = std::min(batch.size(), waiting_);
    list_.splice(list_.end(), batch);
  }
  wakeup(wake);
  return before;
}

@ Both |enqueue|s make the same check: an item handed to a closed list would
never be popped by anyone, and with a socket inside it that would be a
descriptor leaked for good, so it is refused loudly instead.

@<Throw if the list is closed@>=
if (closed_)
  throw std::logic_error("SyncedList: enqueue after close");
@.SyncedList: enqueue after close@>

@ |pop| waits until there is an item or the list is closed, then takes the
oldest item if there is one. IAWLB's |pop| returned |false| when it found
the list empty after waiting, but that could not happen: its |waitdata|
already waited in a loop until the list held an item (spurious wake-ups
included), so the worker's loop |while (!accepted_sock.pop(&sockcaller))|
never turned twice, and |false| meant nothing. Here |false| has a single
meaning: closed and empty, nothing more will ever come.
@^IAWLB, departures from@>
@^spurious wake-up@>

@<Pop and enqueue@>=
bool pop(T *dst)
{
  std::unique_lock<std::mutex> lock(m_);
  waitdata(lock);
  return take_front(dst);
}

@ The timed |pop| has the same shape with a deadline. It computes the deadline
once, so spurious wake-ups do not extend the wait.

@<Pop and enqueue@>=
bool pop(T *dst, std::chrono::milliseconds limit)
{
  std::unique_lock<std::mutex> lock(m_);
  waitdata(lock, std::chrono::steady_clock::now() + limit);
  return take_front(dst);
}

@ Both |pop|s end the same way: take the front item if there is one. The
caller holds the lock.

@<Concurrency management@>=
bool take_front(T *dst)
{ /* the caller holds |m_| */
  if (list_.empty()) return false;
  *dst = std::move(list_.front());
  list_.pop_front();
  return true;
}

@ |waitdata| keeps IAWLB's name and its loop, and makes the predicate explicit:
the thread sleeps while the list is empty {\it and} open. A condition variable
may return from |wait| with no notification at all (a {\it spurious
wake-up}, allowed by POSIX and by \CPLUSPLUS/), and another consumer may have
taken the item it was woken for; so the predicate is tested again after every
return, and a thread leaves the loop only when it holds the lock {\it and} the
predicate says there is something to do. The loop is what the predicate form
|c_.wait(lock, pred)| does inside; we write it out because the reader should
see it.

@<Concurrency management@>=
bool ready() const@+{@+ return !list_.empty() || closed_;@+}
void waitdata(std::unique_lock<std::mutex> &lock)
{
  ++waiting_;
  while (!ready()) c_.wait(lock);
  --waiting_;
}

@ The timed variant stops waiting when |wait_until| reports a timeout, even
if the predicate is still false; the caller then finds the list empty.

@<Concurrency management@>=
void waitdata(std::unique_lock<std::mutex> &lock,@/
  std::chrono::steady_clock::time_point deadline)
{
  ++waiting_;
  while (!ready())
    if (c_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  --waiting_;
}

@ |wakeup| replaces IAWLB's broadcast by one |notify_one| per item. If |n| is
larger than the number of threads still blocked, the extra notifications find
nobody and cost nothing.
@^IAWLB, departures from@>

@<Concurrency management@>=
void wakeup(std::size_t n)
{
  for (std::size_t i = 0; i < n; ++i) c_.notify_one();
}

@ |drain| swaps the whole list with an empty one: constant time under the
lock, and the items are handed over in order. A worker calls it after its
|eventfd| has told it that the list became non-empty.

@<Drain and close@>=
std::list<T> drain()
{
  std::list<T> out;
  std::lock_guard<std::mutex> lock(m_);
  out.swap(list_);
  return out;
}

@ |close| is the end of the list's life as a channel. It is the only operation
that wakes {\it every} waiter, because every waiter has to learn the same
news. |closed| lets a consumer that does not block in |pop| ask whether more
items can still come; |size| is for tests and statistics, and is out of date
as soon as it returns.

@<Drain and close@>=
void close()
{
  {@+std::lock_guard<std::mutex> lock(m_);
    closed_ = true;
  }
  c_.notify_all();
}
bool closed() const
{
  std::lock_guard<std::mutex> lock(m_);
  return closed_;
}
std::size_t size() const
{
  std::lock_guard<std::mutex> lock(m_);
  return list_.size();
}

@ Exercises.

\smallskip
\ex{1}{25} Replace |wakeup(wake)| in the single-item |enqueue| by
|c_.notify_all()| and run the unit test ``many producers and consumers'' under
\.{perf stat -e context-switches}, before and after. The test has four
consumers; change |consumers| in \.{tests/test\_unit.cpp} to eight and to
one, and count again. How many more context switches do you count per item
in each case? \hint{With one consumer, how many threads can |notify_all|
wake?}
\ex{2}{20} Delete the line |--waiting_| in the untimed |waitdata| and run
the unit tests of the list, \msg{build/test\_unit '[syncedlist]'}. Does any
fail? Why does nothing hang, what does the change cost, and what does it
change in the balancer? \hint{|waiting_| only bounds the number of
notifications.}
\ex{3}{20} Write the batch |enqueue| the way IAWLB did, with |list_.insert| at
|list_.cbegin()|. Which assertion of the unit test ``batch enqueue keeps FIFO
order'' fails first? \hint{One of the test's checks looks at the batch
itself.}
\ex{4}{35} Make |SyncedList| lock-free for one producer and one consumer (a ring
of atomics, as in Lamport's single-producer queue) and measure the connection
rate before and after, with
\msg{wrk -H 'Connection: close'} \.{http://127.0.0.1:8080/} through the
balancer. Is the list ever the bottleneck? Use \.{perf} or
\.{valgrind --tool=callgrind} to find out before you guess. \hint{Count the
operations on the list per connection before you count what each costs.}
\exm{5}{20} Suppose the single-item |enqueue| called |c_.notify_one()| first,
before it took the lock, and then appended the item under the lock. Give an
interleaving with one consumer in which the item stays in the list while
the consumer sleeps. Why can the |enqueue| of the book not do this?
\hint{Where is the consumer between its test of the predicate and its call
of |wait|?}
\exm{6}{25} Prove that no item stays in the list while a consumer sleeps
in |wait| for good, although |waiting_| also counts consumers that were
woken and have not yet run. Let $k$ be the number of items in the list, $b$
the number of consumers blocked in |wait|, and $p$ the number that have
been unblocked (by a notification, a spurious wake-up or a timeout) but
have not yet taken the lock again. Show that whenever no |enqueue| is
between its unlock and its last |notify_one|, either $b=0$ or $k\le p$.
\hint{Let $q$ be the notifications that producers have counted but not yet
sent, and check that every event keeps $q\ge\min(k-p,b)$; |notify_one|
unblocks a blocked thread if there is one.}
\smallskip

\noindent Further reading: the \CPLUSPLUS/ standard's [thread.condition];
Butenhof, {\sl Programming with POSIX Threads}, chapter~3; the manual pages
{\tt pthread\_cond\_wait(3p)} and {\tt eventfd(2)}.
