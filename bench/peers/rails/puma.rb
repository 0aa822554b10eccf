# Puma for ActionCable as the Rails guides and puma's docs recommend for
# production: cluster mode with one worker per core, a handful of threads.
bind "tcp://127.0.0.1:#{ENV.fetch("PORT")}"
workers Integer(ENV.fetch("WEB_CONCURRENCY", "2"))
threads_count = Integer(ENV.fetch("RAILS_MAX_THREADS", "5"))
threads threads_count, threads_count
environment "production"
quiet
# ActionCable starts threads (its event loop, the worker pool, the Redis
# subscriber) lazily; each worker loads the app itself so none of them
# inherit a half-started one from the master.
preload_app! false
