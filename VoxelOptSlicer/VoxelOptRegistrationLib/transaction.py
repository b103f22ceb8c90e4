"""All-or-nothing writes of result nodes: a failed write leaves the scene as it was.

A :class:`SceneTransaction` records, before anything is written,

* the nodes it creates (removed again on failure),
* a copy of every existing node it is about to overwrite, with its display nodes (copied back
  on failure: voxels, geometry, transform, segments, table, colours and window), and
* the parent transform of every node it moves under a transform (put back on failure), and
* the name of every output node it renames after changed inputs (put back on failure).

On success the copies are released (:meth:`SceneTransaction.commit`).

Usage::

    with SceneTransaction(scene) as writes:
        node = writes.node_for(existing, "vtkMRMLScalarVolumeNode", "name", "warped")
        ...                                    # write into node; an exception rolls back
"""

from typing import Any, List, Optional, Tuple

from .volumes import ROLE_ATTRIBUTE

#: Attribute of an output node holding the name a run gave it. While the node still has that name
#: (the user has not renamed it), a later run whose inputs give another name renames it: after
#: fixed and moving are swapped, "A warped" must not hold Adef warped.
AUTO_NAME_ATTRIBUTE = "VoxelOpt.AutoName"


class _NodeCopy:
    """A copy of a node outside any scene (same class; content, name, attributes, references).

    A volume node's voxels are kept by reference: a run gives an overwritten volume new image
    data (:func:`.volumes.set_volume_array`) and never edits the old one, and a deep copy cost
    0.2-0.5 s per 512x512x600 volume on the GUI thread. What ``Copy`` does, with a shallow content.
    """

    def __init__(self, node) -> None:
        self.copy = node.CreateNodeInstance()
        self.copy.UnRegister(None)  # CreateNodeInstance returns a new reference
        if not node.IsA("vtkMRMLVolumeNode"):
            self.copy.Copy(node)
            return
        self.copy.SetName(node.GetName())
        self.copy.SetHideFromEditors(node.GetHideFromEditors())
        self.copy.SetAddToScene(node.GetAddToScene())
        if node.GetSingletonTag():
            self.copy.SetSingletonTag(node.GetSingletonTag())
        self.copy.CopyContent(node, False)
        self.copy.CopyReferences(node)

    def restore(self, node) -> None:
        node.Copy(self.copy)

    def release(self, node) -> None:
        """Nothing to do once the run has succeeded: the copy goes with this object."""


class _SegmentsCopy:
    """The segmentation object (``vtkSegmentation``) of a segmentation node, kept by reference: a
    run gives the node a new one (:func:`.segmentations.update_segmentation_from_labels`) and never
    edits the old, and a deep copy of segments is not available everywhere (slicer-core cannot
    construct their representations)."""

    def __init__(self, node) -> None:
        self.segmentation = node.GetSegmentation()

    def restore(self, node) -> None:
        if node.GetSegmentation() is not self.segmentation:
            node.SetAndObserveSegmentation(self.segmentation)

    def release(self, node) -> None:
        """After a successful run: the replaced segmentation's segments drop their representations
        before it goes. Slicer removes a segmentation's segments one by one, and gives each
        segment of a shared labelmap layer a thresholded copy of the layer first: 1.5 s on the GUI
        thread for 122 segments at 512x512x300, 0.03 s without representations."""
        if self.segmentation is not None and node.GetSegmentation() is not self.segmentation:
            for index in range(self.segmentation.GetNumberOfSegments()):
                self.segmentation.GetNthSegment(index).RemoveAllRepresentations()
        self.segmentation = None


def _copy_of(node):
    return _SegmentsCopy(node) if node.IsA("vtkMRMLSegmentationNode") else _NodeCopy(node)


class SceneTransaction:
    """Context manager recording the scene writes of one run and undoing them on an exception."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.created: List[Any] = []
        self._saved: List[Tuple[Any, Any]] = []  # (node, copy), display nodes included
        self._parents: List[Tuple[Any, Optional[str]]] = []
        self._names: List[Tuple[Any, str]] = []  # (node, its name before a rename)
        self._added: List[Any] = []  # helper nodes added for the run's nodes (see added)

    def __enter__(self) -> "SceneTransaction":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.rollback()
        else:
            self.commit()
        return False

    def commit(self) -> None:
        """Keep every write: the saved copies are released (a replaced segmentation cheaply);
        :attr:`created` still lists the nodes the run made."""
        for node, copy in self._saved:
            copy.release(node)
        self._saved.clear()
        self._parents.clear()
        self._names.clear()
        self._added.clear()

    def node_for(self, existing, class_name: str, name: str, role: str):
        """``existing`` (saved first, so that a rollback restores it), or a new node named after ``name``.

        New nodes get the ``VoxelOpt.Role`` attribute ``role``; new volumes and segmentations also
        their default display nodes.
        """
        if existing is not None:
            self.save(existing)
            existing.SetAttribute(ROLE_ATTRIBUTE, role)
            self._follow_name(existing, name)
            return existing
        node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(AUTO_NAME_ATTRIBUTE, node.GetName())
        self.created.append(node)
        if node.IsA("vtkMRMLVolumeNode") or node.IsA("vtkMRMLSegmentationNode"):
            node.CreateDefaultDisplayNodes()
        return node

    def added(self, node) -> None:
        """Record a helper node the run added to the scene for a node it writes (e.g. a colour
        legend display node): removed again by a rollback, kept by a commit, not in :attr:`created`
        (it goes with its node)."""
        self._added.append(node)

    def _follow_name(self, node, name: str) -> None:
        given = node.GetAttribute(AUTO_NAME_ATTRIBUTE)
        if given is None or node.GetName() != given or _made_from(given, name):
            return
        self._names.append((node, given))
        # the name itself when free (the scene's generator counts up even for a free name)
        node.SetName(name if self.scene.GetFirstNodeByName(name) is None else self.scene.GenerateUniqueName(name))
        node.SetAttribute(AUTO_NAME_ATTRIBUTE, node.GetName())

    def save(self, node) -> None:
        """Remember the current state of ``node`` and of its display nodes (once per node)."""
        if any(saved is node for saved, _ in self._saved):
            return
        self._saved.append((node, _copy_of(node)))
        for i in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                self._saved.append((display, _copy_of(display)))

    def set_parent_transform(self, node, transform_node) -> None:
        """Put ``node`` under ``transform_node`` (None: under no transform), undone by a rollback.

        Raises RuntimeError for a transform node not in the scene: the node would be parented to
        an ID that its scene does not resolve, or resolves to another node.
        """
        if transform_node is not None and transform_node.GetScene() is not self.scene:
            raise RuntimeError(f"transform '{transform_node.GetName()}' is not in the scene: '{node.GetName()}' "
                               "cannot be put under it")
        self._parents.append((node, node.GetTransformNodeID()))
        node.SetAndObserveTransformNodeID(transform_node.GetID() if transform_node is not None else None)

    def rollback(self) -> None:
        """Undo every recorded write: parents back, overwritten nodes restored, created nodes removed."""
        for node, parent_id in reversed(self._parents):
            node.SetAndObserveTransformNodeID(parent_id)
        for node, copy in reversed(self._saved):
            copy.restore(node)
        for node, name in reversed(self._names):  # after the copies: a segmentation's does not hold its name
            node.SetName(name)
            node.SetAttribute(AUTO_NAME_ATTRIBUTE, name)
        self._names.clear()
        for node in reversed(self._added):
            if node.GetScene() is self.scene:  # not already removed with a created node
                self.scene.RemoveNode(node)
        self._added.clear()
        for node in reversed(self.created):
            remove_node(self.scene, node)
        self.created.clear()


def _made_from(given: str, name: str) -> bool:
    """Whether ``given`` is ``name`` or the scene's unique variant of it (``name_1``, ...)."""
    suffix = given[len(name) + 1:]
    return given == name or (given.startswith(name + "_") and suffix.isdigit())


def remove_node(scene, node) -> None:
    """Remove ``node`` from ``scene`` with its display and storage nodes: MRML's ``RemoveNode``
    (in desktop Slicer too) leaves them in the scene; Slicer's Data module removes them itself."""
    helpers = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene:
            scene.RemoveNode(helper)
