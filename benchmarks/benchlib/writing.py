"""
Posts written while a master is killed (C{history.py --writing}): a thread
posts for C{users} users of the imported data (authors with long
histories), one post each every C{every} seconds (under the per-user
rate), on the master, so that it dies with the files of the
authors of its last batches unflushed and its slave repairs them as it
takes over.  Nothing waits for the posts' answers: those in flight at the
kill fail, as a client's would.
"""

import threading


class Writing:
    def __init__(self, vms, address, users=20, every=0.1):
        self.vms = vms
        self.address = address
        # Users of the imported data (benchmarks/dataset.py), each with a
        # long history: an account without a password takes PASSWORD.
        self.users = ["user%05d" % (i,) for i in range(users)]
        self.every = every
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = None

    def start(self):
        """Log the writers in (once per run: the tokens hold on every VM), then write."""
        from snstwist.rpc import auth
        metadata = []
        for user in self.users:
            if user not in self.vms.tokens:
                self.vms.login(self.address, user)
            metadata.append(auth.sessionMetadata(self.vms.tokens[user]))
        self.thread = threading.Thread(target=self._write, args=(metadata,), daemon=True)
        self.thread.start()

    def _write(self, metadata):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        stub = pbg.SNSStub(self.vms.channel(self.address))
        while not self.stopped.is_set():
            for md in metadata:
                self.sent += 1
                stub.Post.future(pb.PostRequest(text="written as its master died %d"
                                                % (self.sent,),
                                                request_id="dying-%s-%d" % (self.address,
                                                                            self.sent)),
                                 timeout=5, metadata=md)
            self.stopped.wait(self.every)

    def stop(self):
        """Stop writing (at once: the thread ends within C{every}, see L{join})."""
        self.stopped.set()

    def join(self):
        if self.thread is not None:
            self.thread.join()
