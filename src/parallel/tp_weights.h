// One rank's slices of a model's weights (tp_shard.h says which), served through the same
// WeightSource interface the loaders use, so a rank loads its model exactly as a whole model is
// loaded, with tp_shard_config's shapes.
#pragma once

#include <memory>

#include "model/weight_source.h"
#include "parallel/tp_shard.h"

namespace sagellm {

// `full` must outlive the returned source. A shard of size 1 passes every tensor through.
std::unique_ptr<WeightSource> tp_shard_weights(const WeightSource& full, const TpShard& shard);

}  // namespace sagellm
