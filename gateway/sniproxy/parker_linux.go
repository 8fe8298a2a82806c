package sniproxy

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// parker waits for many sockets to become readable without a goroutine
// per socket. A goroutine blocked in Go's netpoller costs its stack (2 to 8
// KiB) for as long as the connection is quiet; a parked socket costs an
// epoll registration and a map entry. Go offers no readiness callback, so
// the parker keeps its own epoll set: one-shot, level-triggered
// registrations that it hands back to fresh goroutines when they fire.
// The sockets stay registered with Go's netpoller too (an fd may be in
// several epoll sets); the parker only adds a second watcher.
type parker struct {
	epfd    int
	mu      sync.Mutex
	waiting map[int32]waker // by descriptor; one waiter per descriptor
}

// waker is what a parked descriptor resumes: wake runs on a new goroutine.
type waker interface{ wake() }

var sharedParker = sync.OnceValues(func() (*parker, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sniproxy: epoll_create1: %w", err)
	}
	p := &parker{epfd: fd, waiting: make(map[int32]waker)}
	go p.loop()
	return p, nil
})

// park calls w.wake on a new goroutine once fd is readable, has hung up or
// has an error. added says whether fd was parked before (it then stays in
// the set, disarmed, until it is closed). The caller must not close fd
// while it is parked: shutting it down wakes it.
func (p *parker) park(fd int32, added bool, w waker) error {
	p.mu.Lock()
	p.waiting[fd] = w
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	op := unix.EPOLL_CTL_MOD
	if !added {
		op = unix.EPOLL_CTL_ADD
	}
	err := unix.EpollCtl(p.epfd, op, int(fd), &ev)
	if err == unix.ENOENT && op == unix.EPOLL_CTL_MOD {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	} else if err == unix.EEXIST && op == unix.EPOLL_CTL_ADD {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
	}
	if err != nil {
		p.mu.Lock()
		delete(p.waiting, fd)
		p.mu.Unlock()
		return fmt.Errorf("sniproxy: epoll_ctl: %w", err)
	}
	return nil
}

func (p *parker) loop() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			panic(fmt.Sprintf("sniproxy: epoll_wait: %v", err)) // only EBADF/EFAULT/EINVAL: a bug here
		}
		p.mu.Lock()
		for i := range n {
			fd := events[i].Fd
			if w := p.waiting[fd]; w != nil {
				delete(p.waiting, fd)
				go w.wake()
			}
		}
		p.mu.Unlock()
	}
}
